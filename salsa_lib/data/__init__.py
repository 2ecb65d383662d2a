"""The data layer: decoding, the decoded-audio cache, ClothoV2-layout splits, the synthetic benchmark,
the ClothoV2 download and its fake, the reference queries and notebook 00's data sources.

May import salsa_lib.core and the plumbing modules: never search or the stages (lint-imports checks it).
"""
