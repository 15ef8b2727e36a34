from tripletface.cli.main import main

raise SystemExit(main())
