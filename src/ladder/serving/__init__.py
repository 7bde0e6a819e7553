"""Online serving: the OpenAI HTTP app (``gateway``, ``openai_api``), its Ray Serve deployment
(``app``, ``tiers``), and what a request touches on the way (route ``cache``, ``live_policy``,
``shadow`` log, ``metrics``); ``launch`` is ``ladder serve``."""
