"""taming-transformers: the first family (its modules are ``vqdeploy.models``, its loader ``vqdeploy.loading``)."""
