# A Makefile-driven experiment: LEWEL_B against BYOL on Fashion-MNIST, same budget, same seed.
#   make -f examples/experiment.mk            (BIN defaults to the release binaries)
# Each target is a file, so an interrupted experiment picks up where it stopped, and a changed
# setting re-runs only what depends on it.
BIN    ?= target/release
DATA   ?= /usr/share/datasets/fashion-mnist
OUT    ?= exp
EPOCHS ?= 10
SEED   ?= 1
COMMON  = --preset small-lewelb --epochs $(EPOCHS) --seed $(SEED) --quiet

.PHONY: all
all: $(OUT)/lewel-b/probe.json $(OUT)/byol/probe.json $(OUT)/curves.png

$(OUT)/views.npy:
	mkdir -p $(OUT)
	$(BIN)/augment $(DATA)/train-images-idx3-ubyte.gz --recipe lewel-b-small --seed $(SEED) --out $@ > $(OUT)/augment.jsonl

$(OUT)/%/ckpt/latest: $(OUT)/views.npy
	rm -rf $(OUT)/$*
	$(BIN)/pretrain --views $< $(COMMON) --method $* --out $(OUT)/$* > /dev/null

$(OUT)/%/train.npy: $(OUT)/%/ckpt/latest
	$(BIN)/embed --ckpt $< --data $(DATA)/train-images-idx3-ubyte.gz --out $@ > /dev/null

$(OUT)/%/val.npy: $(OUT)/%/ckpt/latest
	$(BIN)/embed --ckpt $< --data $(DATA)/t10k-images-idx3-ubyte.gz --out $@ > /dev/null

$(OUT)/%/probe.json: $(OUT)/%/train.npy $(OUT)/%/val.npy
	$(BIN)/linear-probe --train-features $(OUT)/$*/train.npy --val-features $(OUT)/$*/val.npy --out $@ > /dev/null

$(OUT)/curves.png: $(OUT)/lewel-b/ckpt/latest $(OUT)/byol/ckpt/latest
	$(BIN)/plot-events $(OUT)/lewel-b/events.jsonl $(OUT)/byol/events.jsonl --out $@ > /dev/null
