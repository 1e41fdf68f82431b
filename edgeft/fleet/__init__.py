"""Fleet learning: devices pool what their heads learned through Flower (the optional extra ``edgeft[fleet]``).

Only ``client_app``, ``server_app`` and ``records`` import flwr; the device and server logic does not.
"""
