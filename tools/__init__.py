"""Operator and developer commands: local infrastructure, migrations, make run."""
