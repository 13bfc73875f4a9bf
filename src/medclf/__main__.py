from medclf.cli.main import main

main()
