"""The command line: ``flanneld``/``flannel run`` (lean path) and the typer app for the rest."""
