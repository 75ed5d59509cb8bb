"""Print Keras reference outputs of the `toxic-comment-classifier` Jigsaw BiLSTM for tests/test_reward_jigsaw.py,
on the texts in tests/data/jigsaw_texts.json.

Run by hand in a throwaway venv with Keras 3 (never install Keras in the project venv). The
numbers in the test were made with keras 3.15.1, backend torch 2.13.0+cpu, this way (the .pth line
borrows torch and the package files from the project venv, after the throwaway venv's own packages):

    python3 -m venv /tmp/kvenv
    /tmp/kvenv/bin/pip install keras h5py numpy
    echo /work/main/.venv/lib/python3.11/site-packages > /tmp/kvenv/lib/python3.11/site-packages/zz.pth
    KERAS_BACKEND=torch /tmp/kvenv/bin/python tests/data/make_jigsaw_reference.py

(`pip install torch keras h5py numpy` + `pip install --no-deps toxic-comment-classifier` in the
throwaway venv does the same without the .pth line.)

The model is rebuilt exactly as `toxic_classifier/model.py` builds it (that module imports
TensorFlow, so it is not imported here); tokenisation uses the pickled Keras `Tokenizer` itself.
"""

import importlib.util
import json
import pickle
from pathlib import Path

import keras
import numpy as np
from keras import layers

MAXLEN, VOCAB_SIZE, EMBEDDING_DIM, N_LABELS = 100, 20000, 50, 6  # toxic_classifier/model.py

TEXTS = json.loads((Path(__file__).parent / "jigsaw_texts.json").read_text())  # shared with the test


def main() -> None:
    root = Path(importlib.util.find_spec("toxic_classifier").submodule_search_locations[0]) / "model"
    with open(root / "tokenizer.pickle", "rb") as f:
        tokenizer = pickle.load(f)  # keras.src.legacy.preprocessing.text.Tokenizer

    inp = keras.Input(shape=(MAXLEN,))
    x = layers.Embedding(input_dim=VOCAB_SIZE, output_dim=EMBEDDING_DIM, trainable=False)(inp)
    x = layers.Bidirectional(layers.LSTM(50, return_sequences=True, dropout=0.1, recurrent_dropout=0.1))(x)
    x = layers.GlobalMaxPooling1D()(x)
    x = layers.Dense(50, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    out = layers.Dense(N_LABELS, activation="sigmoid")(x)
    model = keras.Model(inputs=inp, outputs=out)
    model.compile(loss="binary_crossentropy", optimizer="adam")
    model.load_weights(root / "model.weights.h5")

    seqs = tokenizer.texts_to_sequences(TEXTS)
    padded = keras.utils.pad_sequences(seqs, maxlen=MAXLEN)  # (B, 100), pre-padded, pre-truncated
    probs = np.asarray(model.predict(padded, verbose=0), dtype=np.float64)  # (B, 6)
    print(f"# keras {keras.__version__}, backend {keras.backend.backend()}")
    print(f"N_IDS = {[len(s) for s in seqs]}")
    print(f"IDS_6 = {seqs[6]}")
    print("KERAS_PROBS = [  # toxic, severe_toxic, obscene, threat, insult, identity_hate")
    for row in probs:
        print("    [" + ", ".join(f"{p:.8f}" for p in row) + "],")
    print("]")


if __name__ == "__main__":
    main()
