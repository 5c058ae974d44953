"""The flows' names, and their deployments' (each deployment is named after its flow): what every caller that
starts or finds runs uses — the bulk flow, the deployment declarations, acceld."""

CONVERT_FLOW = "convert-image"
BULK_FLOW = "bulk-reconvert"
# `<flow name>/<deployment name>`
CONVERT_DEPLOYMENT = f"{CONVERT_FLOW}/{CONVERT_FLOW}"
BULK_DEPLOYMENT = f"{BULK_FLOW}/{BULK_FLOW}"
