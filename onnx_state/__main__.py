from onnx_state.cli import main

main(prog_name="onnx-state")
