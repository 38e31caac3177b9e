from fedcare.cli import main

main()
