"""The studies: each reruns one finding of the README from the command line, from the repository
root (`python -m studies.NAME --help`). studies/README.md lists them; results/ holds their output."""
