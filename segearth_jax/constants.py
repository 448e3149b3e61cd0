"""Constants that the data side and the model side share, below both (neither `input` nor
`losses` imports `models`)."""

# LLaVA's IMAGE_TOKEN_INDEX: the placeholder id of the image rows in input_ids.
IMAGE_TOKEN_ID = -200

# transformers' ignore index: label positions with this value carry no text loss.
IGNORE_INDEX = -100
