from trickster.cli import main

raise SystemExit(main())
