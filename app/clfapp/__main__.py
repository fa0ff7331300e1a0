from clfapp.cli.main import run

run()
