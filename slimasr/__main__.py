from slimasr.cli import main

raise SystemExit(main())
