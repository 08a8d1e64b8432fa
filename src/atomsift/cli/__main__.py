from atomsift.cli import main

main()
