cd /tmp/g
while pgrep -f batch1.sh >/dev/null; do sleep 5; done
LC="--preset small-lewelb --epochs 12 --warmup-epochs 1 --lars-eta 0.02 --lars-clip --lr 1.0 --ema params"
./try.sh lc-crop05 $LC --ema-momentum 0.99 --set crop_scale=0.5,1
./try.sh lc-m09-crop05 $LC --ema-momentum 0.9 --set crop_scale=0.5,1
./try.sh lc-lr2-m09 $LC --ema-momentum 0.9 --lr 2.0
./try.sh lc-m09-nosol $LC --ema-momentum 0.9 --set solarize_p=0
./try.sh lc-m09-wd5e4 $LC --ema-momentum 0.9 --wd 5e-4
