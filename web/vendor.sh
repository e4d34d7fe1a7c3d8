#!/usr/bin/env bash
# Copy the browser builds the page loads out of node_modules (`npm ci`) into web/vendor/, which the page serves: no
# CDN, so the page works offline and on a static Space. install.sh runs this.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf vendor.partial && mkdir vendor.partial
cp node_modules/@huggingface/transformers/dist/transformers.web.min.js vendor.partial/
cp node_modules/onnxruntime-web/dist/ort.webgpu.bundle.min.mjs vendor.partial/
cp node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded*.wasm node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded*.mjs vendor.partial/
rm -rf vendor && mv vendor.partial vendor
