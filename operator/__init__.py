"""duplex.operator: the DuplexModel CRD and its kopf operator.

Public surface: ``spec.DuplexModelSpec`` (the typed spec), ``crd.crd_manifest()`` (``duplex crd``),
``schema.openapi_schema`` / ``schema.values_json_schema`` (CRD and Helm values schemas from one generator),
``render.render_children`` (pure spec -> manifests; ``duplex render`` prints them offline), ``handlers``
(``handlers.register(settings)`` adds the kopf handlers; ``duplex operator`` runs them), ``kube.Kube`` (the
API calls, through the kubernetes package's DynamicClient). See docs/operator.md.
"""
