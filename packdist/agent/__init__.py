"""The agent of a distribution server: installs signed packages from its site."""
