from boxseg.cli import main

main()
