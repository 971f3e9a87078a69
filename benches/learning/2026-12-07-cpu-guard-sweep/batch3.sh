cd /tmp/g
while pgrep -f batch2.sh >/dev/null; do sleep 5; done
LC="--preset small-lewelb --epochs 12 --warmup-epochs 1 --lars-eta 0.02 --lars-clip --ema params"
./try.sh lc-lr2-m09-crop05 $LC --ema-momentum 0.9 --lr 2.0 --set crop_scale=0.5,1
./try.sh lc-lr4-m09-crop05 $LC --ema-momentum 0.9 --lr 4.0 --set crop_scale=0.5,1
./try.sh lc-lr2-m08-crop05 $LC --ema-momentum 0.8 --lr 2.0 --set crop_scale=0.5,1
./try.sh byol-lc-lr2-m09-crop05 $LC --method byol --ema-momentum 0.9 --lr 2.0 --set crop_scale=0.5,1
./try.sh sgd-lr05-m09-crop05 --preset small-lewelb --epochs 12 --warmup-epochs 1 --optimizer sgd --lr 0.5 --wd 5e-4 --ema params --ema-momentum 0.9 --set crop_scale=0.5,1
