set -x
export PYTHONPATH=scripts:.
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
which ncu; ncu --version | tail -1
S="--section SpeedOfLight --section ComputeWorkloadAnalysis --section Occupancy --section LaunchStats --section SchedulerStats --section WarpStateStats --section InstructionStats --section MemoryWorkloadAnalysis"
i=0
for shape in 1,5120,2048 8,5120,2048 4,1536,65536; do
  i=$((i+1))
  timeout 150 ncu --clock-control none --kernel-name regex:_scan_fwd --launch-skip 2 --launch-count 1 $S python3 scripts/ncu_scan.py --shape $shape > $OUT/ncu_sum_$i.txt 2>&1
  tail -3 $OUT/ncu_sum_$i.txt
done
timeout 150 ncu --clock-control none --kernel-name regex:_scan_fwd --launch-skip 2 --launch-count 1 --section SourceCounters --section WarpStateStats --import-source no --page source --print-source sass --csv python3 scripts/ncu_scan.py --shape 1,5120,2048 > $OUT/ncu_src_1.csv 2>&1
wc -c $OUT/*
