from examples.paper_study.run import main

raise SystemExit(main())
