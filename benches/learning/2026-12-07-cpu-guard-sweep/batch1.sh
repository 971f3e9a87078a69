cd /tmp/g
./try.sh lb-preset --preset small-lewelb --epochs 12 --warmup-epochs 1
./try.sh lb-sgd --preset small-lewelb --epochs 12 --warmup-epochs 1 --optimizer sgd --lr 0.05 --wd 5e-4 --ema params --ema-momentum 0.99
./try.sh lb-larsclip --preset small-lewelb --epochs 12 --warmup-epochs 1 --lars-eta 0.02 --lars-clip --lr 1.0 --ema params --ema-momentum 0.99
./try.sh lb-larsclip-eman98 --preset small-lewelb --epochs 12 --warmup-epochs 1 --lars-eta 0.02 --lars-clip --lr 1.0 --ema eman --ema-momentum 0.98
./try.sh lb-sgd-lr0.2 --preset small-lewelb --epochs 12 --warmup-epochs 1 --optimizer sgd --lr 0.2 --wd 5e-4 --ema params --ema-momentum 0.99
./try.sh lb-larsclip-m09 --preset small-lewelb --epochs 12 --warmup-epochs 1 --lars-eta 0.02 --lars-clip --lr 1.0 --ema params --ema-momentum 0.9
