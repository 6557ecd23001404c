"""Front ends shaped like other libraries' APIs, over the Explainer (pytorch-grad-cam's `cam(input_tensor, targets)`)."""
