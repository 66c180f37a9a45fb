from xraygpt.serve.cli import cli

cli()
