"""Test-session setup shared by every test module."""

# The reference-regression plugin (options --uebench-results etc., the uebench_check fixture and
# marks for reference cases).  Loaded here rather than through a pytest11 entry point so that it
# runs only in this project's test sessions, not in every pytest session of a uebench user.
pytest_plugins = ["uebench.regression"]
