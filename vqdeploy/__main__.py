from vqdeploy.cli import main

main()
