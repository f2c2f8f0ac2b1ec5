"""Plugin contracts (:mod:`nuvom.plugins.contracts`), and what a backend
author may use beside them: :class:`Poller`, and ``register_queue_backend`` /
``register_result_backend`` (:mod:`nuvom.backends`, also importable from
``nuvom.plugins.registry`` as in the earlier nuvom).
"""

from nuvom._polling import Poller

__all__ = ["Poller"]
