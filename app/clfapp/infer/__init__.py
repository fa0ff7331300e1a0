"""Everything that uses a trained model: bundles, prediction, metrics, ensembles, export,
comparison. Never imports training code."""
