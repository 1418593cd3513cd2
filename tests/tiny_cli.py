"""The flags of the smallest grid the CLI tests run: 8-px digits, a 4-wide CNN, one epoch."""

TINY_CLI = [
    "--dataset", "digits:size=8", "--archs", "smallcnn:width=4", "--epochs", "1",
    "--train-size", "200", "--test-size", "100", "--device", "cpu",
]  # fmt: skip
