#!/bin/bash
# usage: eval_only.sh NAME MODELDIR  -- evaluate an existing model with the current code
set -e
name=$1; src=$2; d=/tmp/arms/$name; rm -rf $d; mkdir -p $d/data $d/models
cp -r /work/main/pipelines/expression/data/prepared /work/main/pipelines/expression/data/split $d/data/
cp /work/main/pipelines/expression/params.yaml $d/
cp $src/expression_generator.pt $d/models/
cd $d; export PATH=/work/main/.venv/bin:$PATH
s=$(date +%s); nirgan stage evaluate_expression > eval.log 2>&1; e=$(date +%s)
echo "$name evaluate $((e-s)) s" | tee -a /tmp/arms/times.txt
