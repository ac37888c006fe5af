from supportchat.admin import main

raise SystemExit(main())
