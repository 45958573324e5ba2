#!/bin/sh
# Run in a booted image by vm-tests/boot_image.py --check: wall time of `cfsboot status`
# from the installed package (byte code from py3compile) against the same sources run
# without byte code (how the test OS ran the stager before the package). 11 runs each
# after one warm-up; prints the medians in ms.
set -eu
src=/run/cfsboot-src
mkdir -p "$src"
cp -r /usr/lib/python3/dist-packages/cfsboot /usr/lib/python3/dist-packages/setuproot "$src"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
now() { date +%s%N; }
time_runs() { # command... -> median ms of 11 runs
	"$@" > /dev/null
	i=0
	while [ $i -lt 11 ]; do
		t0=$(now)
		"$@" > /dev/null
		echo $((($(now) - t0) / 1000000))
		i=$((i + 1))
	done | median
}
installed=$(time_runs cfsboot status)
source=$(time_runs env PYTHONPATH="$src" python3 -B -c \
	'import sys; from cfsboot.cli import main; sys.exit(main())' status)
echo "cfsboot status: installed package ${installed} ms, from source without byte code ${source} ms (medians of 11)"
