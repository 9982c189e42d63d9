from maculad.cli import main

raise SystemExit(main())
