import sys

from mas_stream.cli import main

sys.exit(main())
