import sys

from keras_fusion.cli import main

sys.exit(main())
