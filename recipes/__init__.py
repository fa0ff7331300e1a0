"""The recipes shipped with clfapp: the TOML files beside this one (installed as clfapp.builtin_recipes)."""
