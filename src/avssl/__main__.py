from avssl.cli import main

raise SystemExit(main())
