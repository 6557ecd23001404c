"""What the tests share: the eager PyTorch and autograd references written from the algorithm page, small models and
ONNX graphs, parity assertions and input builders. Benchmarks and fuzz targets import it too (`tests.support`)."""
