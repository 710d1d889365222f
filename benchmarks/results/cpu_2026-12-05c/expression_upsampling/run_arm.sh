#!/bin/bash
# usage: run_arm.sh NAME key=value ...   (dotted keys into params.yaml)
set -e
name=$1; shift
d=/tmp/arms/$name; rm -rf $d; mkdir -p $d/data $d/models
cp -r /work/main/pipelines/expression/data/prepared /work/main/pipelines/expression/data/split $d/data/
cp /work/main/pipelines/expression/params.yaml $d/
/work/main/.venv/bin/python - "$d/params.yaml" "$@" <<'PY'
import sys, yaml
p=sys.argv[1]; d=yaml.safe_load(open(p))
for kv in sys.argv[2:]:
    k,v=kv.split("=",1); node=d; ks=k.split(".")
    for x in ks[:-1]: node=node.setdefault(x,{})
    node[ks[-1]]=yaml.safe_load(v)
yaml.safe_dump(d, open(p,"w"))
PY
cd $d
export PATH=/work/main/.venv/bin:$PATH
s=$(date +%s)
nirgan stage train_expression > train.log 2>&1
m=$(date +%s)
nirgan stage evaluate_expression > eval.log 2>&1
e=$(date +%s)
echo "$name train $((m-s)) s evaluate $((e-m)) s" | tee -a /tmp/arms/times.txt
