"""lightsr in other tools' ecosystems.

* :mod:`lightsr.integrations.spandrel` - DLGSANet, LAMNet and LGUN in spandrel (chaiNNer, ComfyUI);
  importing it registers them. Needs the optional ``spandrel`` extra, so it is not imported here.
* :mod:`lightsr.integrations.hub` - what lightsr models declare to loaders and model databases
  (precision support, tiling advice, size tags), shared by the spandrel adapter and the
  OpenModelDB metadata written by ``benchmarks/model_card.py``.

See docs/ecosystem.md.
"""
