from tripletface.cli import main

raise SystemExit(main())
