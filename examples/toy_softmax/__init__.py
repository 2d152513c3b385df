"""The paper's controlled softmax study of over-sharpening (section 3.4, appendices I and J), rerunnable on a CPU."""
