"""How bad each CODEBRIM defect is, shared by the appliance's reports and the hub's findings.

Exposed or spalled concrete means the reinforcement is at risk now; stains and cracks may lead
there; salt deposits are mostly a moisture sign. A label we do not know ranks in the middle.
"""

BACKGROUND = "background"
SEVERITY = {"exposed_bars": 3, "spallation": 3, "corrosion_stain": 2, "crack": 2,
            "efflorescence": 1}
SEVERITY_NAMES = {3: "high", 2: "medium", 1: "low"}
DEFAULT_SEVERITY = 2
