from demo.launcher import main

raise SystemExit(main())
