from tutela.cli import main

raise SystemExit(main())
