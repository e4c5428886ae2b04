from genmesh.cli import main

main()
