#!/bin/sh
# Starts the pinus reference chat in the foreground (see start.js); Ctrl-C or SIGTERM stops it.
cd "$(dirname "$0")" && exec node start.js "$@"
