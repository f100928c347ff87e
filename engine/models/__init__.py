"""Models: the architecture table every part reads (`archs`, pure Python) and the CheXNet-style
networks built from it with their 14-logit head, foreign-weight loading and the weighted BCE loss
(`chexnet`). An architecture is added with one `archs.register` call.
"""
