//! `kiln`: classify images with CNNs trained in PyTorch or TensorFlow, from the command line.
//!
//! The binary only parses arguments, calls the libraries and prints; every decision about
//! images, specs and models lives in `kiln-preprocess`, `kiln-models` and `kiln-runtime`.

mod bench;
mod cli;
mod devices;
mod explain;
mod serve;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::run()
}
