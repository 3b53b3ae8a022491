// FreeCure: hover hints for the txt2img controls, added to the WebUI's label -> tooltip table.
(function() {
    const freecureHints = {
    "Method": "fasa: attention borrows the foundation's attribute features; blend: the prediction is blended toward the foundation's inside the mask (cheaper, cruder).",
    "Attributes": "auto finds them in the prompt; or pick the ones to cure.",
    "FASA strength w (-1 = model default: SD1.x 0.5, SDXL 1.5)": "Logit bias on the foundation's attribute tokens. 0 turns FASA off.",
    "Blend weight": "How far the prediction moves toward the foundation inside the mask (method blend).",
    "Expression (APG)": "Inversion-based guidance for expressions such as smiling or angry. auto: when the prompt has one.",
    "APG depth g": "Fraction of the schedule inverted and regenerated for the expression.",
    "Masks from": "parser: face parsing of the foundation image; attention: its cross-attention maps; both.",
    "Show foundation image and masks": "Adds the foundation image, mask overlays and attention heatmaps after the results.",
    "Blend from (fraction of steps)": "Blending starts after this fraction of the schedule.",
    "Layers": "Self-attention layers that borrow from the foundation. default follows the paper per model.",
    "Identity sources switched off in the foundation pass": "LoRA/LyCORIS, hypernetworks, embeddings/trigger words, identity adapter units.",
    "Trigger words (comma-separated)": "Replaced by the class word in the foundation prompt.",
    "Class word": "Replaces trigger words and embeddings.",
    "Networks that are not identity (comma-separated)": "Style LoRAs that stay on in the foundation pass.",
    "APG guidance": "asymmetric: guidance relative to the source prompt instead of the negative prompt.",
    "Hires fix": "Which pass is cured when hires fix is on.",
    "Strength per attribute (e.g. hair:1.2, glasses:0.6)": "FASA strength for single attributes; the others take the strength above. 0 leaves an attribute as it is. In X/Y/Z cells join items with +.",
    "Mask dilation per attribute (px, e.g. earrings:8)": "Grow single attribute masks further (small earrings, a hat brim); the others take the mask dilation.",
    "Keep the whole attention bank in CPU memory": "Without it, up to 20% of the model's GPU memory holds the bank and the rest goes to CPU memory; with it, none: plain peak memory, at some speed.",
    "FreeCure": "Restore the attributes your prompt asks for (hair, glasses, hat, expression) on portraits whose identity comes from a LoRA, an embedding or an identity adapter."
    };
    if (typeof titles === "object") {
        Object.assign(titles, freecureHints);
    }
})();
